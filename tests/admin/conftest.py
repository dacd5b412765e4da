import pytest
from django.contrib.auth.models import Permission


@pytest.fixture
def bus():
    from allocation.apps import get_bus

    return get_bus()


@pytest.fixture
def make_user(django_user_model):
    """A user with a password, staff or not, holding the permissions named `app.codename`."""

    def make(username, *, staff=True, perms=()):
        user = django_user_model.objects.create_user(
            username=username, password="a-long-test-password", is_staff=staff
        )
        for name in perms:
            app_label, codename = name.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
        return user

    return make
