"""The "allocators" group: the users who may run the commands through /api/v1/."""

from django.db import migrations

# (model, codename, name): the command permissions declared on Batch and Allocation Meta.
COMMAND_PERMISSIONS = [
    ("batch", "create_batch", "Can create batches (CreateBatch)"),
    ("batch", "change_batch_quantity", "Can change a batch's quantity (ChangeBatchQuantity)"),
    ("allocation", "allocate", "Can allocate order lines (Allocate)"),
    ("allocation", "cancel_allocation", "Can cancel allocations (CancelAllocation)"),
]
GROUP = "allocators"


def create_group(apps, schema_editor):
    # Permissions are normally created after *all* migrations (post_migrate), too late for this
    # one: create them here; post_migrate then finds them and leaves them alone.
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    db = schema_editor.connection.alias
    group, _ = Group.objects.using(db).get_or_create(name=GROUP)
    for model, codename, name in COMMAND_PERMISSIONS:
        content_type, _ = ContentType.objects.using(db).get_or_create(
            app_label="allocation", model=model
        )
        permission, _ = Permission.objects.using(db).get_or_create(
            content_type=content_type, codename=codename, defaults={"name": name}
        )
        group.permissions.add(permission)


def delete_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name=GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("allocation", "0002_command_permissions_and_idempotency"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(create_group, delete_group)]
