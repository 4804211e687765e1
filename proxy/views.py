"""The catfight JSON API (docs/catfight-api.md). Plain async Django views: catfights are not the hot path."""

import json
from functools import wraps

from asgiref.sync import sync_to_async
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from hosts import snapshot
from proxy import catfight as catfights
from proxy import catfight_report, keys
from proxy.errors import ApiError
from proxy.models import Catfight, ChallengeSet


def _error(error):
    response = JsonResponse(error.openai_body(), status=error.status)
    if error.retry_after is not None:
        response["Retry-After"] = str(int(error.retry_after))
    return response


def key_or_staff(view):
    """The same access as /v1: once keys exist, a valid key, or a staff login from one of clood's own pages."""

    @wraps(view)
    async def checked(request, *args, **kwargs):
        scope = getattr(request, "scope", None) or {
            "headers": [(name.lower().encode(), value.encode()) for name, value in request.headers.items()]
        }
        try:
            await keys.identify(scope)
        except ApiError as error:
            response = _error(error)
            response["WWW-Authenticate"] = 'Bearer realm="clood"'
            return response
        return await view(request, *args, **kwargs)

    return checked


async def not_found(request):
    return _error(ApiError(404, f"Unknown catfight API path: {request.path[:200]}", code="not_found"))


def _method(request, *allowed):
    if request.method not in allowed:
        raise ApiError(405, f"Method {request.method} is not allowed here.", code="method_not_allowed")


@csrf_exempt  # keys, or the X-CSRFToken check of keys.staff_session, instead of Django's form CSRF
@key_or_staff
async def catfight_list(request):
    try:
        _method(request, "GET", "POST")
        if request.method == "POST":
            return await _start(request)
        try:
            limit = min(500, max(1, int(request.GET.get("limit", 50))))
        except ValueError:
            raise ApiError(400, "limit must be a number.", param="limit", code="invalid_value") from None
        return JsonResponse({"catfights": await sync_to_async(_summaries)(limit)})
    except ApiError as error:
        return _error(error)


async def _start(request):
    try:
        payload = json.loads(request.body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "The request body is not valid JSON.", code="invalid_json") from None
    await snapshot.ensure_fresh()
    spec = await sync_to_async(catfights.parse_spec)(payload)
    created = await sync_to_async(catfights.create)(spec)
    catfights.start([c.pk for c in created])
    bodies = [await sync_to_async(_detail)(c.pk) for c in created]
    if "challenge_set" in payload:
        return JsonResponse({"catfights": bodies}, status=201)
    return JsonResponse(bodies[0], status=201)


def _summaries(limit):
    rows = Catfight.objects.select_related("winner").prefetch_related("entries")[:limit]
    return [
        {
            "id": c.pk,
            "prompt": c.prompt[:200],
            "status": c.status,
            "created_at": c.created_at.isoformat(),
            "rank_by": c.rank_by,
            "winner": {"model": c.winner.model, "host": c.winner.host} if c.winner else None,
            "contestants": len(c.entries.all()),
        }
        for c in rows
    ]


def _detail(catfight_id):
    catfight = Catfight.objects.filter(pk=catfight_id).first()
    if catfight is None:
        raise ApiError(404, f"There is no catfight {catfight_id}.", code="not_found")
    return catfight_report.catfight_as_dict(catfight, list(catfight.entries.all()))


@key_or_staff
async def catfight_detail(request, catfight_id):
    try:
        _method(request, "GET")
        return JsonResponse(await sync_to_async(_detail)(catfight_id))
    except ApiError as error:
        return _error(error)


@key_or_staff
async def catfight_export(request, catfight_id, fmt):
    try:
        _method(request, "GET")
        data = await sync_to_async(_detail)(catfight_id)
    except ApiError as error:
        return _error(error)
    if fmt == "json":
        response = HttpResponse(json.dumps(data, indent=2), content_type="application/json")
    else:
        response = HttpResponse(catfight_report.as_markdown(data), content_type="text/markdown; charset=utf-8")
    response["Content-Disposition"] = (
        f'attachment; filename="catfight-{catfight_id}.{"json" if fmt == "json" else "md"}"'
    )
    return response


@key_or_staff
async def leaderboard(request):
    try:
        _method(request, "GET")
        return JsonResponse({"rows": await sync_to_async(catfight_report.leaderboard)()})
    except ApiError as error:
        return _error(error)


@key_or_staff
async def challenge_sets(request):
    try:
        _method(request, "GET")
    except ApiError as error:
        return _error(error)

    def rows():
        return [
            {"id": c.pk, "name": c.name, "prompts": c.prompts, "rubric": c.rubric} for c in ChallengeSet.objects.all()
        ]

    return JsonResponse({"challenge_sets": await sync_to_async(rows)()})
