"""Django routes of the catfight JSON API, mounted at /catfights (clood_site/urls.py)."""

from django.urls import path

from proxy import views

urlpatterns = [
    path("", views.catfight_list, name="catfights"),
    path("leaderboard", views.leaderboard, name="catfight_leaderboard"),
    path("challenge-sets", views.challenge_sets, name="challenge_sets"),
    path("<int:catfight_id>", views.catfight_detail, name="catfight"),
    path("<int:catfight_id>/export.json", views.catfight_export, {"fmt": "json"}, name="catfight_export_json"),
    path("<int:catfight_id>/export.md", views.catfight_export, {"fmt": "md"}, name="catfight_export_md"),
]
