"""Inference engines: the protocol (:mod:`.base`), the messages that cross it (:mod:`.io_struct`),
the scheduler, sampling, and backends under :mod:`.backends`."""
