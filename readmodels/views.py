"""The read side of the book-compatible API."""

from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from readmodels import selectors


class OrderAllocationsCompatApi(APIView):
    """`GET /allocations/<orderid>`: 200 `[{"sku", "batchref"}]`, or 404 when there are none."""

    def get(self, request: Request, orderid: str) -> Response:
        result = selectors.allocations_for_order(orderid)
        if not result:
            return Response({"message": "not found"}, status=404)
        return Response(result)
