"""Storage: the Parquet contract (``schema``), atomic checksummed reads and writes on any pyarrow
filesystem (``storage``), the one-writer lease of a sweep (``lease``) and the listing of sweeps in a
storage root (``sweeps``). The bottom layer: it imports nothing of caviar's but ``orchestrator.errors``.
"""
