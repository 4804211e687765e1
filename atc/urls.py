from django.urls import path

from atc import catfight_views, history, views

app_name = "atc"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("history", history.history_page, name="history"),
    path("history.csv", history.history_csv, name="history_csv"),
    path("chat", views.chat, name="chat"),
    path("catfight", catfight_views.start, name="catfight"),
    path("catfight/<int:catfight_id>", catfight_views.detail, name="catfight_detail"),
    path("catfights", catfight_views.catfights, name="catfights"),
    path("catfights/leaderboard", catfight_views.leaderboard, name="leaderboard"),
]
