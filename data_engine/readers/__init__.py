"""Reading inputs: file layouts into shards, shards into row-schema Arrow tables."""
