"""tenantwire: what the tenantd daemon and its clients share, and nothing else.

The message format and protocol version (:mod:`~tenantwire.protocol`), the error codes and the one
base exception (:mod:`~tenantwire.errors`), tensor specs and the tensor codec
(:mod:`~tenantwire.tensors`), CurveZMQ socket options and key files (:mod:`~tenantwire.curve`) and
the OpenVINO IR bundle (:mod:`~tenantwire.irbundle`). It imports pyzmq, msgpack and numpy, never the
daemon, so that the client library (``tenantclient``) can ship without it.
"""
