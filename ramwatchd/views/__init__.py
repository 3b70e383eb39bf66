"""Stage 4, the views: the timeline, the summary, the picture and the saved
form. They read plain data (a capture's entries and its saved dict) and never
/proc or the kernel."""
