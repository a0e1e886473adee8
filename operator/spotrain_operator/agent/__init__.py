"""spotrain-agent: a DaemonSet program that polls the cloud's instance metadata service for spot interruption
notices and marks its own Node (see ``node_marker`` for the exact contract the operator reads).

The modules split pure parsing (unit-tested on documented payloads) from the thin I/O around it:
``aws_imds``, ``gcp_metadata``, ``azure_events`` talk to the metadata services, ``node_marker`` decides and
applies the Node patch (also used by the operator's AWS queue mode), ``main`` is the command line.
"""
