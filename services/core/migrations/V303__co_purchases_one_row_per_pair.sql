-- Co-purchase counts are symmetric, so one row per unordered pair is
-- enough (sku < other_sku): every order then updates half as many rows,
-- the largest single write of an order batch (issue 12's profile).
-- Both directions held the same count, so dropping one loses nothing.
DELETE FROM co_purchases WHERE sku > other_sku;
ALTER TABLE co_purchases
    ADD CONSTRAINT co_purchases_one_row_per_pair CHECK (sku < other_sku);
