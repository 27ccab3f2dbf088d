"""Small shared pieces with no shopclip dependencies: image decoding, hashing, atomic IO."""
