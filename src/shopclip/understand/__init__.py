"""Product understanding jobs over the task heads: fit them on a labelled catalog
(`shopclip heads train`), tag a catalog (`shopclip tag`), find duplicate listings
(`shopclip dedupe`). Layer 4: the pure heads live in :mod:`shopclip.heads` (layer 3,
shared with the evaluation suite); fitting the matcher borrows the evaluation suite's
synthetic re-listings, hence this package sits above both."""
