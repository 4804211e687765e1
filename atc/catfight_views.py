"""Catfight pages: start one, watch one, the list of past ones and the leaderboard.

Each page is a shell; its ES module reads and drives the catfight JSON API (docs/catfight-api.md).
"""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie


@staff_member_required
@ensure_csrf_cookie  # the page's script repeats it in X-CSRFToken (proxy/keys.py staff_session)
def start(request):
    return render(request, "atc/catfight.html")


@staff_member_required
@ensure_csrf_cookie
def detail(request, catfight_id):
    return render(request, "atc/catfight_detail.html", {"catfight_id": catfight_id})


@staff_member_required
@ensure_csrf_cookie
def catfights(request):
    return render(request, "atc/catfights.html")


@staff_member_required
@ensure_csrf_cookie
def leaderboard(request):
    return render(request, "atc/leaderboard.html")
