"""Delivery rows name their handler by a stable name (allocation/bootstrap.py, HANDLER_NAMES)
instead of its Python path, so that moving a handler no longer strands its deliveries."""

from django.db import migrations

RENAMED = {
    "readmodels.projections.add_batch_to_read_model": "read_model.add_batch",
    "readmodels.projections.change_batch_quantity_in_read_model": (
        "read_model.change_batch_quantity"
    ),
    "readmodels.projections.add_allocation_to_read_model": "read_model.add_allocation",
    "readmodels.projections.remove_allocation_from_read_model": "read_model.remove_allocation",
    "notifications.handlers.publish_allocated_event": "redis.publish_line_allocated",
    "notifications.handlers.append_to_event_stream": "redis.append_to_event_stream",
    "notifications.handlers.send_out_of_stock_notification": "email.out_of_stock",
    "allocation.handlers.reallocate": "allocation.reallocate",
}


def rename(apps, schema_editor, names):
    Delivery = apps.get_model("allocation", "Delivery")
    for old, new in names.items():
        Delivery.objects.filter(handler=old).update(handler=new)


class Migration(migrations.Migration):
    dependencies = [("allocation", "0005_released_lines_keep_their_row")]

    operations = [
        migrations.RunPython(
            lambda apps, editor: rename(apps, editor, RENAMED),
            lambda apps, editor: rename(apps, editor, {new: old for old, new in RENAMED.items()}),
        ),
    ]
