"""The Celery application: `celery -A config worker` and `celery -A config beat`."""

import os

import billiard.pool
from celery import Celery

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
