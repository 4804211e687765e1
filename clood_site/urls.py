from django.contrib import admin
from django.urls import include, path
from django.views.generic import RedirectView

admin.site.site_header = "clood"
admin.site.site_title = "clood admin"
admin.site.index_title = "The garden"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="atc:dashboard", permanent=False)),
    path("admin/", admin.site.urls),
    path("atc/", include("atc.urls")),
    path("catfights", include("proxy.catfight_urls")),
    path("catfights/", include("proxy.catfight_urls")),
]
