"""Adapter delivery to served engines whose store the server can't read (`s3://`).

vLLM's `/v1/load_lora_adapter` reads a local directory; a serving pod has no access to the run's
store. So every serving replica runs a small agent beside its server (`selfmoa adapter-agent`,
the worker image, sharing an `emptyDir` mounted at the same path in both containers), and the
stage and the agents meet in the run's store, never through the Service (a request through the
Service reaches one replica only):

- **Desired set** `serving/<model-slug>/adapters.json`, written by the client side
  (`OpenAIEngine.use_adapter` through `client.AgentDelivery`): the adapters the replicas must
  serve, most recently asked for first, at most `KEEP` (3) of them. In the loop respond(k) asks
  for the parent (the gate's best accepted iteration) and evaluate(k) for k and its ceiling, so
  the three most recent are the current, the parent and the best: nothing still needed is ever
  dropped, and with one slot spare (`--max-loras 4`) a new adapter loads before an old one goes.
  Each entry: the served `name`, the adapter's store `key` and the `digest` of its files as its
  stage's `_manifest.json` lists them (so a changed adapter can never hide behind an old name).
- **Replica reports** `serving/<model-slug>/replicas/<replica-id>.json`, one per agent: what its
  server has loaded (checked against the server's `/v1/models`), what it refused and why, and an
  `updated` time refreshed at least every `HEARTBEAT_S`. A report older than `STALE_AFTER_S` is
  a replica that is gone; an agent that is stopped deletes its own.
- **Agent** (`agent.AdapterAgent`): polls the desired set; for each wanted adapter its server
  lacks it downloads the stage's files named by the manifest into a temp directory, checks each
  sha256 against the manifest, renames the directory into place (so no half download is ever
  loaded), then calls `/v1/load_lora_adapter` with the local path ("already loaded" counts as
  success). Adapters that left the desired set are unloaded and their files deleted. A server
  that restarted (its `/v1/models` lacks adapters) gets them loaded again. Failures are retried
  with backoff; a file that doesn't match its manifest is refused and the report says why.
- **Client** (`client.AgentDelivery.deliver`): writes the desired set, then waits (bounded) until
  `spec.serving.replicas` fresh reports list the adapter as loaded, and returns its name. A
  replica that refused the adapter ends the wait at once with the agent's reason.

A `file://` store on a volume the server shares needs none of this: its path goes to the server
directly.
"""
