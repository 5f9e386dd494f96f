"""Watch the served model: the prediction log, clinicians' feedback, drift against the reference.

- :mod:`pneumo.monitor.stats`: cheap statistics of the model's pixels, the same at serving time
  and in the reference;
- :mod:`pneumo.monitor.store`: the prediction store (SQLAlchemy: SQLite or PostgreSQL);
- :mod:`pneumo.monitor.writer`: the service's non-blocking, batched, failure-tolerant log;
- :mod:`pneumo.monitor.images`: kept uploads, content-addressed, with a retention limit;
- :mod:`pneumo.monitor.reference`: the `reference` stage (validation split statistics);
- :mod:`pneumo.monitor.drift`: a window of the log against the reference (Evidently), and the
  verdict ok / warn / alert;
- :mod:`pneumo.monitor.export`: confirmed cases back into a Kermany-layout folder.
"""
