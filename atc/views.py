"""ATC pages: the dashboard, the history and the chat console."""

from functools import wraps

from django.conf import settings
from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render


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
def chat(request):
    return render(request, "atc/chat.html")
