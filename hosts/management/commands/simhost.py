"""`manage.py simhost`: simulated Ollama hosts on 127.0.0.1, to try clood (or benchmark it) without Ollama."""

import asyncio
import os

from django.core.management.base import BaseCommand, CommandError

from hosts.simulator import FAIL_MODES, SimConfig, SimModel, canonical_name, serve

DEFAULT_MODELS = "llama3.2:1b,qwen2.5-coder:3b,nomic-embed-text"


class Command(BaseCommand):
    help = "Start simulated Ollama hosts (native API and OpenAI /v1) on 127.0.0.1 until Ctrl-C."

    def add_arguments(self, parser):
        parser.add_argument("--port", type=int, default=11434, help="Port of the first host (0 = any free port).")
        parser.add_argument("--count", type=int, default=1, help="Number of hosts, on consecutive ports.")
        parser.add_argument("--models", default=DEFAULT_MODELS, help="Comma-separated model names.")
        parser.add_argument("--loaded", default="", help="Comma-separated models that start loaded.")
        parser.add_argument("--ttft", type=float, default=0.05, help="Seconds before the first token.")
        parser.add_argument("--tps", type=float, default=50, help="Tokens per second (0 = as fast as possible).")
        parser.add_argument("--tokens", type=int, default=32, help="Tokens in each reply.")
        parser.add_argument("--load-time", type=float, default=0, help="Seconds to load a model that is not loaded.")
        parser.add_argument(
            "--pull-seconds",
            type=float,
            default=3.0,
            help="Seconds a pull (/api/pull) takes to download a model of the simulated library (0 = at once).",
        )
        parser.add_argument("--fail", choices=FAIL_MODES, help="Make every request fail this way.")
        parser.add_argument("--fail-status", type=int, default=500, help="HTTP status for --fail error.")
        parser.add_argument("--openai-only", action="store_true", help="Serve only /v1 (like llama.cpp or vLLM).")
        parser.add_argument("--api-key-env", metavar="VAR", help="Require the API key in this variable on /v1.")

    def handle(
        self,
        *args,
        port,
        count,
        models,
        loaded,
        ttft,
        tps,
        tokens,
        load_time,
        pull_seconds,
        fail,
        fail_status,
        **options,
    ):
        if count < 1:
            raise CommandError("--count must be at least 1")
        if not 0 <= port <= 65535 or (port and port + count - 1 > 65535):
            raise CommandError(f"--port {port} with --count {count} does not fit in 1-65535")
        names = [name.strip() for name in models.split(",") if name.strip()]
        if not names:
            raise CommandError("--models needs at least one model name")
        wanted_loaded = [name.strip() for name in loaded.split(",") if name.strip()]
        loaded_names = {canonical_name(name) for name in wanted_loaded}
        unknown = [name for name in wanted_loaded if canonical_name(name) not in map(canonical_name, names)]
        if unknown:
            raise CommandError(f"--loaded names models not in --models: {', '.join(unknown)}")
        for flag, value in (
            ("--ttft", ttft),
            ("--tps", tps),
            ("--load-time", load_time),
            ("--pull-seconds", pull_seconds),
        ):
            if value < 0:
                raise CommandError(f"{flag} must be >= 0")
        if tokens < 1:
            raise CommandError("--tokens must be at least 1")
        if not 100 <= fail_status <= 599:
            raise CommandError("--fail-status must be an HTTP status (100-599)")
        api_key = self.api_key(options["api_key_env"])

        def config():  # each host gets its own models: their loaded state is per host
            return SimConfig(
                models=[SimModel(name=name, loaded=canonical_name(name) in loaded_names) for name in names],
                reply_tokens=tokens,
                ttft=ttft,
                tokens_per_second=tps,
                load_time=load_time,
                pull_seconds=pull_seconds,
                api_key=api_key,
                ollama_api=not options["openai_only"],
                fail=fail,
                fail_status=fail_status,
            )

        ports = [port + offset if port else 0 for offset in range(count)]
        try:
            asyncio.run(serve([(config(), p) for p in ports], on_ready=self.announce))
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise CommandError(f"cannot listen: {exc}") from None

    def api_key(self, variable):
        if not variable:
            return None
        value = os.environ.get(variable, "")
        if not value:
            raise CommandError(f"environment variable {variable} is not set or empty")
        return value

    def announce(self, hosts):
        for host in hosts:
            config = host.config
            models = ", ".join(f"{m.name} (loaded)" if m.loaded else m.name for m in config.models)
            kind = "OpenAI-only" if not config.ollama_api else "Ollama"
            extra = f", failing: {config.fail}" if config.fail else ""
            self.stdout.write(f"{host.url}  {kind}  models: {models}{extra}")
        self.stdout.write("Press Ctrl-C to stop.")
        self.stdout.flush()
