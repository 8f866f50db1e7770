"""Read the URL lists users have: into a table (small lists) or, a batch at a time, into one parquet file."""

from curate.urllist.readers import ReadConfig, list_files
from curate.urllist.stream import StagedList, read_url_list, stage_url_list, staged_url_list

__all__ = ["ReadConfig", "StagedList", "list_files", "read_url_list", "stage_url_list", "staged_url_list"]
