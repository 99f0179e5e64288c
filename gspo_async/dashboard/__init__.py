"""The live staleness and throughput dashboard (served from the package, no CDN) and the static run report."""
