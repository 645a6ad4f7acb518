"""Webhooks (Standard Webhooks): events recorded with the terminal transition, delivered by the CPU worker.

- ``events``: recording an event in the transaction that made its job or style version terminal (one INSERT …
  SELECT), freezing its body, what beat sends, what an attempt's answer does to it, the delivery log.
- ``secrets``: each client's ``whsec_`` secrets, encrypted at rest (Fernet keys from settings), rotation with an
  overlap, and the ``webhook-signature`` header (signed by the spec's reference library, ``standardwebhooks``).

The delivery itself (the POST through the safe fetcher, no redirects, a timeout) is ``worker.webhooks``; the GPU
workers only ever add one cheap statement to their finish transaction.
"""
