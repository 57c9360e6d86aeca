"""A changelist paginator that does not COUNT(*) a large unfiltered table on PostgreSQL."""

from django.core.paginator import Paginator
from django.db import connections
from django.db.models import QuerySet
from django.db.models.sql.datastructures import Join
from django.utils.functional import cached_property


class EstimatedCountPaginator(Paginator):
    """Counts exactly, except for an unfiltered queryset on PostgreSQL.

    There the planner's row estimate (``pg_class.reltuples``, kept fresh by autovacuum)
    stands in for ``COUNT(*)``, which reads every row: seconds at millions of runs. Small
    tables, and tables never analysed, are still counted exactly, because their estimate
    is unreliable and their count is cheap. Any filter or search means an exact count.
    """

    # Below this estimate an exact count is cheap enough and shows the true number.
    exact_below = 10_000
    # True once count has used the estimate; the changelist then says "about N".
    is_estimate = False

    @cached_property
    def count(self) -> int:
        estimate = self.estimated_count()
        if estimate is not None and estimate >= self.exact_below:
            self.is_estimate = True
            return estimate
        return super().count

    def estimated_count(self) -> int | None:
        """The planner's estimate for an unfiltered PostgreSQL table, else None."""
        queryset = self.object_list
        if not isinstance(queryset, QuerySet) or not _is_whole_table(queryset):
            return None
        connection = connections[queryset.db]
        if connection.vendor != "postgresql":
            return None
        table = connection.ops.quote_name(queryset.model._meta.db_table)
        with connection.cursor() as cursor:
            # to_regclass() answers NULL rather than failing when the table is missing.
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = to_regclass(%s)", [table])
            row = cursor.fetchone()
        # reltuples is -1 for a table that has never been vacuumed or analysed.
        if row is None or row[0] is None or row[0] < 0:
            return None
        return int(row[0])


def _is_whole_table(queryset: QuerySet) -> bool:
    query = queryset.query
    return not (
        query.where
        or query.distinct
        or query.combinator
        or query.group_by is not None
        or query.low_mark
        or query.high_mark is not None
        or any(isinstance(alias, Join) for alias in query.alias_map.values())
    )
