"""A study's results -> tables, statistics and figures -> report.md and report.html."""
