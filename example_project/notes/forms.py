from __future__ import annotations

from django import forms

from example_project.notes.models import Note


class NoteForm(forms.ModelForm):  # type: ignore[type-arg]
    """The form on the notes page."""

    class Meta:
        model = Note
        fields = ["text"]
        widgets = {"text": forms.TextInput(attrs={"placeholder": "Write a note"})}
