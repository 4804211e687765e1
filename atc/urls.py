from django.urls import path

from atc import views

app_name = "atc"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
