"""`manage.py monitor`: run the host monitor as its own process (set CLOOD_RUN_MONITOR=false on the servers).

With REDIS_URL it takes part in the contest for the cluster's monitor lock like a server would, so two of them (one
per machine, for failover) never check the hosts twice.
"""

import asyncio

from django.conf import settings
from django.core.management.base import BaseCommand

from clood_site import shared
from hosts.monitor import check_and_publish, lead_forever, run_forever


class Command(BaseCommand):
    help = "Check every enabled host on an interval (or once, with --once)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="One check of every enabled host, then exit.")
        parser.add_argument("--interval", type=float, default=settings.CLOOD_MONITOR_INTERVAL)

    def handle(self, *args, once, interval, **options):
        if once:
            for name, report in asyncio.run(check_and_publish()):
                status = "online" if report.ok else f"offline — {report.error}"
                self.stdout.write(f"{name}: {status}")
            return
        try:
            asyncio.run(lead_forever(interval) if shared.enabled() else run_forever(interval))
        except KeyboardInterrupt:
            pass
