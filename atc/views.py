"""ATC pages: the dashboard, the history and the chat console."""

from functools import wraps

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


def viewer_required(view):
    """Staff only, unless CLOOD_ATC_PUBLIC makes the read-only pages public (a wall screen)."""
    staff_view = staff_member_required(view)

    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if settings.CLOOD_ATC_PUBLIC:
            return view(request, *args, **kwargs)
        return staff_view(request, *args, **kwargs)

    return wrapper


@viewer_required
def dashboard(request):
    return render(request, "atc/dashboard.html", {"public": settings.CLOOD_ATC_PUBLIC})


@staff_member_required
@ensure_csrf_cookie  # the page's script repeats it in X-CSRFToken to use /v1 (proxy/keys.py staff_session)
def chat(request):
    return render(request, "atc/chat.html")
