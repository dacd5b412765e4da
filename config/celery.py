"""The Celery application: `celery -A config worker` and `celery -A config beat`."""

import os

import billiard.pool
from celery import Celery
from celery.signals import task_postrun, task_prerun, worker_process_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("allocation")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# A prefork pool process, on its way out, waits until the main process has counted every
# result it sent, polling 300 times every 0.1 s. During a warm shutdown the main process may
# never count the last one (it stops reading results through its event loop), and the pool
# process then held the shutdown for 30 s after its last task had finished. Nothing is lost by
# waiting less: a result still in the pipe is read when the pool is joined, and a task whose
# result never arrives is requeued (task_reject_on_worker_lost) and delivered once.
billiard.pool.GUARANTEE_MESSAGE_CONSUMPTION_RETRY_LIMIT = 20  # 2 s


@task_prerun.connect
@task_postrun.connect
def heal_database_connections(task=None, **kwargs) -> None:
    """Drop a broken database connection before and after each task.

    Celery's Django fix-up keeps the connection for CELERY_DB_REUSE_MAX tasks without ever
    checking it, so after a PostgreSQL restart every later task of the pool process failed on
    the dead connection. Django does this check around each web request; this is the same for
    tasks (eager tasks run inside a request, which does its own).
    """
    if task is not None and task.request.is_eager:
        return
    from allocation.database import heal

    heal()


@worker_process_init.connect
def commit_derived_writes_asynchronously(**kwargs) -> None:
    """A worker's transactions change read models, done-marks and attempt counts, all of which
    the outbox derives again if a crash loses them; they need not wait for the disk. A
    command run by a worker (a reallocation) still commits synchronously. See
    docs/architecture.md, "Durability"; ALLOCATION_WORKER_ASYNC_COMMIT turns it off."""
    from django.conf import settings

    if settings.ALLOCATION_WORKER_ASYNC_COMMIT:
        from allocation.database import commit_without_waiting_for_the_disk

        commit_without_waiting_for_the_disk()
