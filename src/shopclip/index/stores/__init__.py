"""Server-backed vector stores: the same `VectorIndex` contract, rows kept in a database.

A store class here sets `per_view_name = True` and takes, beside `dim`:

- `uri`: where the server is (`postgresql://…`, `http://host:19530`, a Milvus Lite file, or
  `embedded` for a server the store starts itself under `workdir`);
- `view`: which view (image, text, fused) this index holds; each view is its own table or
  collection, named from `view` and `name` (default: derived from the work folder);
- `workdir`: the work folder, where an embedded server keeps its data.

`save(folder)` writes only a manifest saying where the rows are (never the rows);
`load(folder, uri=…)` reconnects, optionally elsewhere. Rows carry the embedding store's
`hashes` so a server start can find a lag cheaply. Indexes that share a database return
the same `transaction_key`, and `transaction()` makes one transaction of every change made
inside it, so the server's write to the three views commits together or not at all. A
store that cannot be used raises `StoreUnavailableError` with one line naming the store and
the fix (wrong URI, server down, missing extension, a dimension the table does not hold).

Client libraries are optional extras, imported only when a store is used.
"""
