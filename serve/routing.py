"""How calls find a model replica: every replica is a candidate, the least loaded one with room wins.

Serve's default router samples two replicas at random per attempt and backs off when both are busy. A GPU model
replica takes one call at a time (max_ongoing_requests=1), so when the shots of a vlog fill all but one replica the
sampling misses the free one most of the time and the last shot waits for a busy replica to finish instead (seconds
to minutes). Offering every replica per attempt lets Serve's own selection (cached queue lengths, active probes of
unknown or full replicas, lowest queue wins) find the free one at once. It costs one probe per busy replica per
attempt, which is nothing next to a diffusion call.
"""

from __future__ import annotations

from typing import List, Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica


class FreeReplicaRouter(FIFOMixin, RequestRouter):
    def initialize_state(self, probe_deadline_s: Optional[float] = None, **_: object) -> None:
        """`probe_deadline_s`: how long a replica may take to report its queue length. Serve's 0.1 s default
        counts a replica on a busy host as unavailable, and the call then waits for a busy one."""
        if probe_deadline_s:
            self.queue_len_response_deadline_s = float(probe_deadline_s)
            self.max_queue_len_response_deadline_s = max(float(probe_deadline_s),
                                                          self.max_queue_len_response_deadline_s)

    async def choose_replicas(self, candidate_replicas: List[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> List[List[RunningReplica]]:
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # all were offered: wait before the next try
        return [list(candidate_replicas)] if candidate_replicas else []
