from django.urls import path

from atc import history, views

app_name = "atc"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("history", history.history_page, name="history"),
    path("history.csv", history.history_csv, name="history_csv"),
    path("chat", views.chat, name="chat"),
]
