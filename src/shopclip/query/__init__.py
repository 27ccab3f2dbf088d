"""Query-side search logic: filters understood from the query, language routing, rank fusion, hybrid search."""
