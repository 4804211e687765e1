"""ATC pages."""

from django.contrib.admin.views.decorators import staff_member_required
from django.shortcuts import render

from hosts.models import Host


@staff_member_required
def dashboard(request):
    hosts = Host.objects.prefetch_related("models")
    return render(request, "atc/dashboard.html", {"hosts": hosts})
