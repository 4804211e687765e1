"""Catfight pages: start one, watch one, the list of past ones and the leaderboard.

Each page is a shell; its ES module reads and drives the catfight JSON API (docs/catfight-api.md).
"""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render


@staff_member_required
def start(request):
    return render(request, "atc/catfight.html")


@staff_member_required
def detail(request, catfight_id):
    return render(request, "atc/catfight_detail.html", {"catfight_id": catfight_id})


@staff_member_required
def catfights(request):
    return render(request, "atc/catfights.html")


@staff_member_required
def leaderboard(request):
    return render(request, "atc/leaderboard.html")
