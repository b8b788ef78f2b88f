"""From finished runs to a report: reading run folders, paired statistics, tables, figures, and the
Markdown and HTML pages."""
