//! No library: the tests are the `[[test]]` targets of this package.
