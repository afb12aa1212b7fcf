//! Tests of the task lister against made-up memory.
use super::*;
