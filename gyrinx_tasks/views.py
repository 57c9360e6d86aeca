from django.http import HttpResponse
def pubsub_push(request): return HttpResponse(status=501)
