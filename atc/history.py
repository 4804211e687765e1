"""The history page: what RequestLog says about hosts and models over a chosen period (being built)."""

from django.http import HttpResponse
from django.shortcuts import render

from atc.views import viewer_required


@viewer_required
def history_page(request):
    return render(request, "atc/history.html", {})


@viewer_required
def history_csv(request):
    return HttpResponse("", content_type="text/csv")
