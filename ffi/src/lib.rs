//! C ABI for chorus (see the torch backend issue); the skeleton keeps the workspace layout.
