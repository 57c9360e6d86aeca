"""A changelist paginator that never counts millions of rows.

- An unfiltered list on PostgreSQL uses the planner's row estimate (``pg_class.reltuples``,
  kept fresh by autovacuum) instead of ``COUNT(*)``, which reads every row.
- A filtered list counts at most ``count_cap + 1`` rows and says "more than N" beyond that.
- Either way the total is approximate, so pages past it are served (empty at worst) rather
  than redirected, and no "last page" link is offered. A page that starts past the table's
  highest id is empty without a query: no list has more rows than that, and asking the
  database to skip that many rows would read every one of them (or overflow its OFFSET).
Small tables, and tables never analysed, are counted exactly.
"""

from django.core.paginator import EmptyPage, Page, PageNotAnInteger, Paginator
from django.db import connections
from django.db.models import QuerySet
from django.db.models.sql.datastructures import Join
from django.utils.functional import cached_property

INTEGER_IDS = {"AutoField", "BigAutoField", "SmallAutoField", "IntegerField",
               "BigIntegerField", "PositiveIntegerField", "PositiveBigIntegerField"}


class EstimatedCountPaginator(Paginator):
    # Below this estimate an exact count is cheap enough and shows the true number.
    exact_below = 10_000
    # A filtered list counts up to this many rows, then says "more than".
    count_cap = 10_000
    # Set by count: the total is the planner's estimate ("about N") ...
    is_estimate = False
    # ... or the capped count of a filtered list ("more than N").
    is_capped = False

    @property
    def is_approximate(self) -> bool:
        _ = self.count  # counting decides which of the two applies
        return self.is_estimate or self.is_capped

    @cached_property
    def count(self) -> int:
        estimate = self.estimated_count()
        if estimate is not None and estimate >= self.exact_below:
            self.is_estimate = True
            return estimate
        queryset = self.object_list
        if isinstance(queryset, QuerySet) and not _is_whole_table(queryset):
            # Ordering is irrelevant to a count and makes the capped subquery slower.
            capped = queryset.order_by()[: self.count_cap + 1].count()
            if capped > self.count_cap:
                self.is_capped = True
            return capped
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

    def validate_number(self, number):
        if not self.is_approximate:
            return super().validate_number(number)
        try:
            number = int(number)
        except (TypeError, ValueError) as exc:
            raise PageNotAnInteger(self.error_messages["invalid_page"]) from exc
        if number < 1:
            raise EmptyPage(self.error_messages["min_page"])
        return number  # past the approximate end: an empty page, not an error

    def page(self, number):
        number = self.validate_number(number)
        if not self.is_approximate:
            return super().page(number)
        bottom = (number - 1) * self.per_page
        bound = self.row_bound
        if bound is not None and bottom >= bound:
            # row_bound is None unless object_list is a QuerySet.
            assert isinstance(self.object_list, QuerySet)
            return Page(self.object_list.none(), number, self)
        return Page(self.object_list[bottom : bottom + self.per_page], number, self)

    @cached_property
    def row_bound(self) -> int | None:
        """More rows than any list of this table can have: its highest integer id (ids count
        up from 1), read from the primary key's index. None if the ids are not integers."""
        queryset = self.object_list
        if not isinstance(queryset, QuerySet):
            return None
        pk = queryset.model._meta.pk
        if pk is None or pk.get_internal_type() not in INTEGER_IDS:
            return None
        highest = (queryset.model._default_manager.db_manager(queryset.db)
                   .order_by("-pk").values_list("pk", flat=True).first())
        return highest or 0

    def get_elided_page_range(self, number=1, *, on_each_side=3, on_ends=2):
        if not self.is_approximate:
            yield from super().get_elided_page_range(
                number, on_each_side=on_each_side, on_ends=on_ends)
            return
        # No tail: the last page number is only a guess.
        number = self.validate_number(number)
        start = max(number - on_each_side, 1)
        if start > on_ends + 1:
            yield from range(1, on_ends + 1)
            yield self.ELLIPSIS
        else:
            start = 1
        yield from range(start, number + on_each_side + 1)
        yield self.ELLIPSIS


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
