"""Front doors: the ways requests reach the daemon. Each one binds, reads, identifies the caller,
decodes, and hands the request to the same parts (the inference core, pipelines, the operations
table); none of them holds a copy of what those do. :mod:`~tenantd.frontdoors.zeromq` is tenantd's
own protocol; a standard front door (KServe v2 over HTTP or gRPC) goes beside it.
"""
