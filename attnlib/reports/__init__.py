"""Loading and plotting the benchmark results that the book shows (one module per benchmark)."""
