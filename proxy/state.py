"""The proxy's per-process live state: slots and queue (admission) and what it has seen of each host (stats)."""

from proxy.queue import Admission
from proxy.stats import LiveStats

admission = Admission()
stats = LiveStats()
