import pytest

import django_durable as durable
from tests.testapp.workflows import fan_out

pytestmark = pytest.mark.workers


def test_fan_out_through_a_real_worker(start_worker):
    handle = durable.start_workflow(fan_out, 5)
    worker = start_worker()
    assert handle.result(timeout=60) == [0, 2, 4, 6, 8]
    worker.terminate()
    assert worker.wait() == 0
