"""trainctl blocks."""
