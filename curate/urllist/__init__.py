"""Read the URL lists users have (parquet, csv, tsv, jsonl, txt; gzipped or not) into one canonical table."""

from curate.urllist.readers import ReadConfig, list_files, read_url_list

__all__ = ["ReadConfig", "list_files", "read_url_list"]
