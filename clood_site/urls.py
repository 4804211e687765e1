from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView

from proxy.views import not_found as catfight_not_found

admin.site.site_header = "clood"
admin.site.site_title = "clood admin"
admin.site.index_title = "The garden"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="atc:dashboard", permanent=False)),
    path("admin/", admin.site.urls),
    path("atc/", include("atc.urls")),
    path("catfights", include("proxy.catfight_urls")),
    path("catfights/", include("proxy.catfight_urls")),
    re_path(r"^catfights/", catfight_not_found),  # anything else there: a JSON 404, never Django's HTML page
]
