"""Reading runs back: summaries for `inspect`, plots."""
